"""Training data in NotaGen's format, built from music21's corpus or a user's folder of scores."""
