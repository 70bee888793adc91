"""The predict layer (see README "Layout")."""
