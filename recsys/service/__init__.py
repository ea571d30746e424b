"""The HTTP service and web page over a finished run (FastAPI + Uvicorn): the last layer, above runs."""
