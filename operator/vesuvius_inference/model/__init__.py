"""The model layer (see README "Layout")."""
