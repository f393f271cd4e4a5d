# The app image. Kafka, the DynamoDB API and Redis stay external: point the app at them with
# MESSAGING_KAFKA_BOOTSTRAP, MESSAGING_DYNAMODB_ENDPOINT ("" for AWS) and MESSAGING_REDIS_URL.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY src ./src
RUN pip install --no-cache-dir --prefix=/install -c constraints.txt .

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 app
COPY --from=build /install /usr/local
USER 10001
ENV MESSAGING_HOST=0.0.0.0 \
    MESSAGING_PORT=8000 \
    PYTHONUNBUFFERED=1
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
ENTRYPOINT ["messaging"]
CMD ["serve"]
