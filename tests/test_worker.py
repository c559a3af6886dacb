"""What the warm worker and the coordinator's warm SuperExec take from Flower 1.41: if an upgrade
moves or changes any of it, this fails, naming what changed, before any federation does."""

from __future__ import annotations

import inspect

import flwr


def test_flower_is_the_exact_version_the_worker_was_written_against() -> None:
    assert flwr.__version__ == "1.41.0", "lab.runtime.worker uses Flower's client-side internals: re-read them"


def test_the_client_side_functions_the_worker_calls_keep_their_signatures() -> None:
    from flwr.supernode.runtime.run_clientapp import pull_task_input, push_message, push_task_output

    assert list(inspect.signature(pull_task_input).parameters) == ["client"]
    assert list(inspect.signature(push_message).parameters) == ["client", "message", "context"]
    assert list(inspect.signature(push_task_output).parameters) == ["client", "context", "sub_status", "details"]


def test_the_runtime_api_and_helpers_the_worker_uses_are_where_it_expects() -> None:
    from flwr.cli.install import install_from_fab
    from flwr.common.config import get_fab_config, get_project_dir
    from flwr.common.constant import ErrorCode, SubStatus
    from flwr.proto.runtime_pb2 import AcquireTaskRequest, AcquireTaskResponse
    from flwr.supercore.constant import TaskType
    from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
    from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor
    from flwr.supercore.object_ref import load_app
    from flwr.supercore.runtime import RuntimeHttpClient

    assert TaskType.CLIENT_APP.value == "flwr-clientapp"
    assert "supported_task_types" in AcquireTaskRequest.DESCRIPTOR.fields_by_name
    assert {"task", "token"} <= set(AcquireTaskResponse.DESCRIPTOR.fields_by_name)
    assert {"AcquireTask", "PullTaskInput", "PushTaskOutput", "SendTaskHeartbeat"} <= set(dir(RuntimeHttpClient))
    assert list(inspect.signature(load_app).parameters)[:3] == ["module_attribute_str", "error_type", "project_dir"]
    assert "skip_prompt" in inspect.signature(install_from_fab).parameters
    assert list(inspect.signature(get_project_dir).parameters)[:3] == ["fab_id", "fab_version", "fab_hash"]
    assert callable(get_fab_config) and callable(make_task_heartbeat_fn_http)
    assert {"start", "stop"} <= set(dir(HeartbeatSender))
    assert SubStatus.COMPLETED and SubStatus.FAILED and ErrorCode.CLIENT_APP_RAISED_EXCEPTION
    assert RuntimeTokenHttpInterceptor and RuntimeVersionHttpInterceptor


def test_the_superexec_internals_the_coordinators_superexec_replaces_are_where_it_expects() -> None:
    """lab.runtime.superexec runs Flower's run_superexec with its own executor in place of the one
    get_executor makes, and launches a ServerApp as Flower's executor would, with its arguments."""
    from flwr.supercore.constant import TASK_TYPE_TO_APPIO_API_ADDRESS_ARG, TASK_TYPE_TO_COMMAND, TaskType
    from flwr.supercore.superexec import run_superexec
    from flwr.supercore.superexec.executor.subprocess_executor import SubprocessExecutor
    from flwr.supercore.superexec.executor.types import ExecutionSpec, Executor
    from flwr.superlink.cli.flwr_serverapp import flwr_serverapp

    assert "get_executor(" in inspect.getsource(run_superexec.run_superexec)
    assert list(inspect.signature(flwr_serverapp).parameters) == []
    assert TASK_TYPE_TO_COMMAND[TaskType.SERVER_APP] == "flwr-serverapp"
    assert TASK_TYPE_TO_APPIO_API_ADDRESS_ARG[TaskType.SERVER_APP] == "--runtime-api-address"
    source = inspect.getsource(SubprocessExecutor.launch)  # the arguments the lab's executor passes too
    for argument in ('"--token"', '"--insecure"', '"--root-certificates"', '"--parent-pid"', "suppress_output"):
        assert argument in source, argument
    assert {"get_eligible_capacity", "wait_for_capacity", "launch", "reconcile", "close"} <= set(dir(Executor))
    assert {"task_type", "runtime_api_address", "token", "parent_pid", "suppress_output"} <= set(
        ExecutionSpec.__dataclass_fields__
    )
