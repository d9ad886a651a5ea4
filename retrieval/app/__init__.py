"""The application, the top layer: the search engine an app embeds, the ``vlsearch`` commands, the web server
and the demo. It imports the index layer (``indexer``) and the model core (``retrieval.core``); nothing imports
it but ``retrieval``'s own public names."""
