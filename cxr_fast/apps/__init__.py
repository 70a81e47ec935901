"""Applications on top of the library: the local web server (serve/), tuning, recipes, the demo, the shortcut audit."""
