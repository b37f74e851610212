"""Order, catalog, prompt, suggestion, and the classifier that scores the catalog."""
