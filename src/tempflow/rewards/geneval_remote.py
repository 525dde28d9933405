"""GenEval and other heavy rewards through the pickle-over-HTTP reward servers in common use, with a restricted unpickler."""
