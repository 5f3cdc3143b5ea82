"""Dashboards as code: one spec (spec.yaml), provisioners for Metabase and Superset."""
