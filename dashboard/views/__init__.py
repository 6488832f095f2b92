"""Streamlit page scripts (run by path from app.py); a package only so the import-linter contracts see them."""
