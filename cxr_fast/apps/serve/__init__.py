"""`serve`: a local web page over a model folder (server.py), its model-card panel (card.py) and page (page.py)."""
