"""The operator plane: the HTTP API, the command service, the live feed and the web page."""
