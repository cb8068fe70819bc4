"""posenc's Hydra configs (installed as package data: ``pkg://posenc.configs``)."""
