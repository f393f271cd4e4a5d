"""The lean DynamoDB transport without I/O: its Signature Version 4 against AWS's published
examples and against botocore's signer, and the errors both transports make of the same
refusal (ADR 0023)."""

from __future__ import annotations

from datetime import datetime

import orjson
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials as BotoCredentials
from botocore.exceptions import ClientError

from messaging.infra.dynamo_http import (
    Credentials,
    LeanDynamoClient,
    authorization,
    error_from_answer,
    signing_key,
)
from messaging.infra.dynamodb import DynamoError, from_client_error, unanswered


def test_signature_matches_the_sigv4_test_suite_get_vanilla() -> None:
    # AWS Signature Version 4 test suite, case "get-vanilla".
    key = signing_key(
        "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "20150830", "us-east-1", "service"
    )
    header = authorization(
        method="GET",
        path="/",
        query="",
        headers={"Host": "example.amazonaws.com", "X-Amz-Date": "20150830T123600Z"},
        payload=b"",
        access_key="AKIDEXAMPLE",
        key=key,
        amz_date="20150830T123600Z",
        region="us-east-1",
        service="service",
    )
    assert header == (
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, "
        "SignedHeaders=host;x-amz-date, "
        "Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
    )


def test_signature_matches_the_s3_get_object_example() -> None:
    # The "GET Object" example of the S3 documentation's SigV4 header-based authentication.
    key = signing_key("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "20130524", "us-east-1", "s3")
    header = authorization(
        method="GET",
        path="/test.txt",
        query="",
        headers={
            "Host": "examplebucket.s3.amazonaws.com",
            "Range": "bytes=0-9",
            "x-amz-content-sha256": (
                "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
            ),
            "x-amz-date": "20130524T000000Z",
        },
        payload=b"",
        access_key="AKIAIOSFODNN7EXAMPLE",
        key=key,
        amz_date="20130524T000000Z",
        region="us-east-1",
        service="s3",
    )
    assert header.endswith(
        "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
    )


@pytest.mark.parametrize("token", [None, "session-token-1"])
def test_a_dynamodb_request_is_signed_as_botocore_signs_it(token: str | None) -> None:
    body = orjson.dumps({"TableName": "t", "Key": {"k": {"S": "v"}}, "ConsistentRead": True})
    target = "DynamoDB_20120810.GetItem"
    request = AWSRequest(
        method="POST",
        url="https://dynamodb.eu-west-1.amazonaws.com/",
        data=body,
        headers={"Content-Type": "application/x-amz-json-1.0", "X-Amz-Target": target},
    )
    SigV4Auth(
        BotoCredentials("AKIDEXAMPLE", "secret/key", token), "dynamodb", "eu-west-1"
    ).add_auth(request)
    amz_date = request.headers["X-Amz-Date"]
    moment = datetime.strptime(amz_date + "+0000", "%Y%m%dT%H%M%SZ%z").timestamp()
    lean = LeanDynamoClient(
        None,  # type: ignore[arg-type]  # no I/O: only the headers are built
        "https://dynamodb.eu-west-1.amazonaws.com/",
        "eu-west-1",
        Credentials("AKIDEXAMPLE", "secret/key", token),
        clock=lambda: moment,
    )
    headers = lean.headers("GetItem", body)
    assert headers["X-Amz-Date"] == amz_date
    assert headers["Authorization"] == request.headers["Authorization"]
    assert headers.get("X-Amz-Security-Token") == token


def test_credentials_never_show_their_secret() -> None:
    assert "secret" not in repr(Credentials("AKID", "secret", "token-secret"))


def _client_error(code: str, status: int, **extra: object) -> ClientError:
    return ClientError(
        {
            "Error": {"Code": code, "Message": "why"},
            "ResponseMetadata": {"HTTPStatusCode": status},
            **extra,  # type: ignore[typeddict-item]
        },
        "TransactWriteItems",
    )


def _same(a: DynamoError, b: DynamoError) -> None:
    assert (a.code, a.message, a.status, a.retriable) == (b.code, b.message, b.status, b.retriable)
    assert a.cancellation_reasons == b.cancellation_reasons
    assert a.item == b.item


def test_a_cancelled_transaction_carries_its_reasons_through_both_transports() -> None:
    reasons = [{"Code": "None"}, {"Code": "ConditionalCheckFailed", "Message": "no"}]
    lean = error_from_answer(
        400,
        orjson.dumps(
            {
                "__type": "com.amazonaws.dynamodb.v20120810#TransactionCanceledException",
                "message": "why",
                "CancellationReasons": reasons,
            }
        ),
    )
    sdk = from_client_error(
        _client_error("TransactionCanceledException", 400, CancellationReasons=reasons)
    )
    _same(lean, sdk)
    assert lean.code == "TransactionCanceledException"
    assert lean.cancellation_codes == ["None", "ConditionalCheckFailed"]
    assert not lean.retriable


def test_a_failed_condition_can_carry_the_item() -> None:
    item = {"k": {"S": "v"}}
    lean = error_from_answer(
        400,
        orjson.dumps(
            {
                "__type": "com.amazonaws.dynamodb.v20120810#ConditionalCheckFailedException",
                "message": "why",
                "Item": item,
            }
        ),
    )
    sdk = from_client_error(_client_error("ConditionalCheckFailedException", 400, Item=item))
    _same(lean, sdk)
    assert lean.item == item


@pytest.mark.parametrize(
    ("code", "status", "retriable"),
    [
        ("ThrottlingException", 400, True),
        ("ProvisionedThroughputExceededException", 400, True),
        ("InternalServerError", 500, True),
        ("ServiceUnavailable", 503, True),
        ("ValidationException", 400, False),
        ("ResourceNotFoundException", 400, False),
    ],
)
def test_retriable_is_the_same_for_both_transports(code: str, status: int, retriable: bool) -> None:
    lean = error_from_answer(
        status,
        orjson.dumps({"__type": f"com.amazonaws.dynamodb.v20120810#{code}", "message": "why"}),
    )
    _same(lean, from_client_error(_client_error(code, status)))
    assert lean.retriable is retriable


def test_an_answer_without_an_error_document_is_named_by_its_status() -> None:
    assert error_from_answer(502, b"<html>bad gateway</html>").code == "HTTP502"
    assert error_from_answer(502, b"").retriable
    assert not error_from_answer(403, b"[]").retriable


def test_no_answer_at_all_is_retriable() -> None:
    error = unanswered(TimeoutError())
    assert error.code == "TimeoutError"
    assert error.retriable
