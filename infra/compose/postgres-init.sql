-- Run once by the postgres image on an empty data volume: one database per metadata store.
CREATE DATABASE airflow;
CREATE DATABASE mlflow;
