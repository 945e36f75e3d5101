"""Serving the champion: the REST server, the Streamlit page and `busi predict`."""
