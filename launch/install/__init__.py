"""Install profiles: what ``make setup`` puts in .venv (setup_profile, standard library only,
run by the system python) and the GPU profile's wheels fetched here to carry (gpu/)."""
