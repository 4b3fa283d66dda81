"""Environments that misbehave on purpose, for fault-injection tests (`faulty_envs:Class` ids)."""

import gymnasium as gym
import numpy as np


class FaultyPendulum(gym.Wrapper):
    """Pendulum-v1 whose steps pass through `corrupt(count, obs, reward)`."""

    def __init__(self):
        super().__init__(gym.make("Pendulum-v1"))
        self.count = 0

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.count += 1
        obs, reward = self.corrupt(self.count, obs.copy(), reward)
        return obs, reward, terminated, truncated, info

    def corrupt(self, count, obs, reward):
        return obs, reward


class NaNObservationEnv(FaultyPendulum):
    """Every 50th observation holds a NaN and an Inf."""

    def corrupt(self, count, obs, reward):
        if count % 50 == 0:
            obs[0], obs[2] = np.nan, np.inf
        return obs, reward


class BadRewardsEnv(FaultyPendulum):
    """The reward is +Inf every 40th step, else NaN every 70th."""

    def corrupt(self, count, obs, reward):
        if count % 40 == 0:
            return obs, float("inf")
        if count % 70 == 0:
            return obs, float("nan")
        return obs, reward
