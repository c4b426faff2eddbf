"""The server's routes, one module per resource; :data:`xnat_plugin.server.app.ROUTES` lists
which XNAT endpoint each method answers."""
