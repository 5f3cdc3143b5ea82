"""The simulated IoT sensor fleet that publishes readings to Kafka."""
