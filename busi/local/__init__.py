"""The local platform: MLflow and Airflow on this machine (`busi up`), and the local cluster."""
