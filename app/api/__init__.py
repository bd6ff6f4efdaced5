"""HTTP adapter: Flask blueprints over the framework-free interactions."""
