"""toyjob's job with an env flow that returns two outputs, as ChatLearn's RLHF engine does
(``return value_out, reward_out``): the scorer returns only the reward, and each
training sample is the merge of the actor's row and the scorer's, so the job trains
on exactly toyjob's samples and must end on toyjob's weights.
"""

from __future__ import annotations

from toys import Actor, Learner, Scorer, prompts

from rlhfjob import Engine, Environment, Trainer


class RewardOnly(Scorer):
    def forward_step(self, data, iteration):
        return {"reward": super().forward_step(data, iteration)["reward"]}


def build(config=None) -> Engine:
    actor, scorer, learner = Actor("actor"), RewardOnly("scorer"), Learner("learner")

    def env_flow(batch):
        actor_out = actor.forward_step(batch)
        return actor_out, scorer.forward_step(actor_out)

    def trainer_flow(batch):
        learner.train_step(batch)

    return (
        Engine(Environment(env_flow), Trainer(trainer_flow), config=config)
        .set_parameter_sync(learner, actor)
        .set_dataset(prompts(11))
    )


if __name__ == "__main__":
    build().learn()
