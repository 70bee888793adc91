"""The geometry layer (see README "Layout")."""
