CREATE DATABASE prefect OWNER gateway;
