"""The store layer (see README "Layout")."""
