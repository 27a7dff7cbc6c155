"""Human labelling of every task (lopsided, arms, chirality): redshift-stratified queues, a label
database, a web app, agreement between labellers (Cohen's kappa) and export to a labelled manifest for
training.

Modules: :mod:`.choices` (each task's labels, keys and overlays), :mod:`.queue` (sampling),
:mod:`.store` (SQLAlchemy label database), :mod:`.agreement`, :mod:`.export`, :mod:`.app` (FastAPI
labelling app) with :mod:`.security` (authentication, CSRF, hosts, body limit) and :mod:`.overlays`
(the A1 and winding measurements shown over the image).
"""

