"""The HTTP door: FastAPI app, routers and middleware over `shared`."""
