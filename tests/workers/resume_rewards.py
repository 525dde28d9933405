"""Rewards for the resume tests: mean image brightness [B] (always varies, so every iteration
updates the weights), optionally sending this process a signal at one reward call."""

import os
import signal


def brightness():
    """TEMPFLOW_TEST_SIGNAL_AT="<call>:<SIGNAME>" sends that signal at the given (1-based) call."""
    calls = [0]
    at, _, name = os.environ.get("TEMPFLOW_TEST_SIGNAL_AT", "").partition(":")

    def reward(images, prompts):
        calls[0] += 1
        if at and calls[0] == int(at):
            os.kill(os.getpid(), getattr(signal, name))
        return images.float().mean(dim=(1, 2, 3))
    return reward
