"""The openai-agents SDK with its default model (the Responses API) against our server: a plain answer, and
a real unforced tool loop with the demo model."""

from __future__ import annotations

import pytest

from tests.server.conftest import API_KEY

agents = pytest.importorskip("agents", reason="openai-agents is not installed (pip install -e '.[test]')")


@pytest.fixture
def sdk(demo):
    import openai

    agents.set_tracing_disabled(True)
    agents.set_default_openai_client(openai.AsyncOpenAI(base_url=demo["url"] + "/v1", api_key=API_KEY,
                                                        max_retries=0), use_for_tracing=False)
    agents.set_default_openai_api("responses")
    return agents


def test_plain_answer(sdk):
    agent = sdk.Agent(name="demo", model="tiny",
                      model_settings=sdk.ModelSettings(extra_body={"chat_template_kwargs": {"enable_thinking": False}}))
    result = sdk.Runner.run_sync(agent, "Hello!")
    assert isinstance(result.final_output, str) and result.final_output.strip()


def test_tool_loop(sdk):
    calls = []

    @sdk.function_tool
    def set_timer(minutes: int) -> str:
        """Start a countdown timer.

        Args:
            minutes: Length of the timer in minutes
        """
        calls.append(minutes)
        return '{"status": "started", "minutes": %d}' % minutes

    agent = sdk.Agent(name="demo", model="tiny", tools=[set_timer],
                      model_settings=sdk.ModelSettings(extra_body={"chat_template_kwargs": {"enable_thinking": True}}))
    result = sdk.Runner.run_sync(agent, "Set a timer for 25 minutes.")
    assert calls == [25]
    assert "25" in result.final_output
