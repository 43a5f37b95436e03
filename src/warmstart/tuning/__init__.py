"""`warmstart tune`'s parts, in the order a search uses them: search (the tuned options, the metric,
``plan``), space (the space file), study (the folder and study.db), trials (one trial's process, its
epochs through the events pipe, pruning) and report (best/, best.json, trials.csv, trials.png). The
command itself, tasks/tune.py, only puts them in order."""
