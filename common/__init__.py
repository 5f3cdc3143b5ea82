"""Pieces shared by the producer, the Spark jobs, the DAGs and the local stack."""
