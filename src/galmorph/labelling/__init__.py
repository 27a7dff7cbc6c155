"""Human labelling of lopsidedness: redshift-stratified queues, a label database, a web app,
agreement between labellers (Cohen's kappa) and export to a labelled manifest for training.

Modules: :mod:`.queue` (sampling), :mod:`.store` (SQLAlchemy label database), :mod:`.agreement`,
:mod:`.export`, :mod:`.app` (FastAPI labelling app).
"""

#: Labels a labeller can give (``unsure`` = skip: counts as seen, never exported).
LABEL_CHOICES: tuple[str, ...] = ("symmetric", "lopsided", "unsure")
#: Keyboard shortcuts of the web app.
KEYS = {"l": "lopsided", "s": "symmetric", "u": "unsure"}
