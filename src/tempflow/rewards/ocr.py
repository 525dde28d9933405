"""OCR reward (text rendering): 1 - normalised edit distance between the prompt's quoted text and the text an OCR model reads."""
