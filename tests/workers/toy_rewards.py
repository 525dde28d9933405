"""A reward for tests that always varies across samples: mean image brightness, [B]."""


def brightness():
    def reward(images, prompts):
        return images.float().mean(dim=(1, 2, 3))
    return reward
