"""The stages layer (see README "Layout")."""
