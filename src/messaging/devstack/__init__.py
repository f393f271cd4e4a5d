"""The local development stack: Kafka, a DynamoDB API emulator and Redis on 127.0.0.1.

No Docker: Kafka runs from Maven Central jars, the DynamoDB API from a cargo-built emulator,
Redis from the Debian package.
"""
