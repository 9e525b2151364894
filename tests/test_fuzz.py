"""Schemathesis over the whole OpenAPI description, in process, with a real admin key.

Every operation gets generated valid and invalid requests; schemathesis' checks must
all pass: no 5xx, every answer matches its declared status, content type and schema,
and ``ignored_auth`` finds no operation that answers without (or with a wrong) key.
``positive_data_acceptance`` is left out: a spec has rules JSON Schema cannot say
(a bundled dataset takes no path, low < high, ...), so a schema-valid body may rightly
get a 422 that says what to change.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.generation.case import Case
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance
from secure_app import Service, make_service

from api.security import KEYED_PATHS

MAX_EXAMPLES = 25
"""Per operation and mode: ~20 operations, about a minute on two shared cores."""


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Service:
    return make_service(tmp_path_factory.mktemp("fuzz"), rate_limit_per_minute=1_000_000)


@pytest.fixture(scope="module")
def admin_key(fuzzed: Service) -> str:
    return fuzzed.key("fuzzer", "admin")


@pytest.mark.slow
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_every_operation_holds_under_generated_input(
    fuzzed: Service, admin_key: str, mode: GenerationMode
) -> None:
    api = schemathesis.openapi.from_asgi("/openapi.json", fuzzed.app)
    failures: dict[str, str] = {}
    for result in api.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy(mode))
        @settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            database=None,
            derandomize=True,  # the same examples on every CI run; raise MAX_EXAMPLES to dig
            suppress_health_check=list(HealthCheck),
            phases=[Phase.explicit, Phase.generate],
        )
        def check(case: Case) -> None:
            case.call_and_validate(
                headers={"Authorization": f"Bearer {admin_key}"},
                excluded_checks=[positive_data_acceptance],
            )

        try:
            check()
        except Unsatisfiable:  # no input to make invalid (e.g. GET /healthz)
            assert mode == GenerationMode.NEGATIVE
        except Exception as exc:  # collect every operation's report, then fail once
            failures[operation.label] = str(exc)[:3000]
    assert not failures, "\n\n".join(f"{k}:\n{v}" for k, v in failures.items())


def test_every_v1_operation_declares_the_key_schemes(fuzzed: Service) -> None:
    """What ignored_auth relies on: the schemes are in the description, per operation."""
    spec = fuzzed.client().get("/openapi.json").json()
    assert {"HTTPBearer", "APIKeyHeader"} <= set(spec["components"]["securitySchemes"])
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            declared = {name for entry in operation.get("security", []) for name in entry}
            keyed = path.startswith("/v1/") or path in KEYED_PATHS
            expected = {"HTTPBearer", "APIKeyHeader"} if keyed else set()
            assert declared == expected, (method, path)
