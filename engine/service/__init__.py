"""The serving core, UI-free: models (loaded, lent per copy), jobs (a stream of events with
cancel, keyed by id), pieces (progress, names, records) and the Studio facade that the page
(webui/), the HTTP API and scripts call. engine/service/policy.py: what a client may reach."""
