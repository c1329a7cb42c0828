"""Providers: one small contract per kind (base.py), one folder per engine or vendor."""
