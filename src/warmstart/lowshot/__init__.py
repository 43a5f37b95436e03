"""Zero- and few-shot classification: prompt scoring, NLI/similarity zero-shot, SetFit-style and
in-context few-shot."""
