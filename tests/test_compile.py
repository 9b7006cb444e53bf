# Copyright (c) 2026 SelfMedHPM bundles contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.


"""The compiled HPM step (``HPMTrainer(compile=True)``) against the eager one, and its graph: one graph per part,
no graph break (static shapes: the number of masked patches is passed, never read from the mask)."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Events
from monai.inferers import SimpleInferer
from selfmedhpm.ema import EMATeacher, unwrap
from selfmedhpm.engine import HPMTrainer
from selfmedhpm.inferers import AutocastInferer
from selfmedhpm.losses import HPMLoss
from selfmedhpm.masking import hard_patch_mask, num_masked
from selfmedhpm.networks import HPMMaskedAutoEncoder
from selfmedhpm.views import TEACHER_VIEWS, TeacherView

pytestmark = pytest.mark.slow  # torch.compile of the HPM step: minutes on a CPU

SMALL = dict(hidden_size=48, mlp_dim=96, num_heads=4, decoder_hidden_size=24, decoder_mlp_dim=48,
             decoder_num_layers=1, decoder_num_heads=4)  # fmt: skip


def _train(compile: bool, iterations: int = 3, teacher_view: str = "full"):
    torch.manual_seed(0)
    net = HPMMaskedAutoEncoder(img_size=32, **SMALL)
    g = torch.Generator().manual_seed(3)
    batches = [{"image": torch.rand(2, 1, 32, 32, 32, generator=g)} for _ in range(iterations)]
    trainer = HPMTrainer(
        device="cpu", max_epochs=1, train_data_loader=batches, network=net,
        optimizer=torch.optim.AdamW(net.parameters(), 1e-3), loss_function=HPMLoss(patch_size=16),
        teacher=EMATeacher(net, 0.9, 0.9), final_hard_ratio=1.0, decollate=False, teacher_view=teacher_view,
        compile=compile, compile_kwargs={"dynamic": False},
    )  # fmt: skip
    losses = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(float(e.state.output["loss"])))
    trainer.run()
    return trainer, net, losses


@pytest.mark.parametrize("view", TEACHER_VIEWS)
def test_compiled_step_gives_the_eager_losses_and_weights(view):
    eager, eager_net, eager_losses = _train(compile=False, teacher_view=view)
    compiled, compiled_net, compiled_losses = _train(compile=True, teacher_view=view)
    assert isinstance(compiled.network, torch._dynamo.eval_frame.OptimizedModule)  # MONAI compiled the student
    assert unwrap(compiled.network) is compiled_net
    assert compiled_losses == pytest.approx(eager_losses, rel=1e-4)
    assert len(set(eager_losses)) == 3  # three different batches, three different losses
    # the ranking loss is blind to a shift of every predicted score: the exact gradient of the loss predictor's bias
    # is 0, and AdamW scales its rounding noise (about 1e-8, different eager and compiled) to steps of about lr/2
    blind = {"predictor_head.bias"}
    for name, value in eager_net.state_dict().items():  # AdamW steps of about lr = 1e-3 each
        assert name in blind or torch.allclose(compiled_net.state_dict()[name], value, atol=1e-3), name
    moved = max((a - b).abs().max() for a, b in zip(eager_net.parameters(), _train(False, 0)[1].parameters()))
    assert moved > 1e-3  # the tolerance is below what 3 steps change
    for (name, value), other in zip(eager.teacher.state_dict().items(), compiled.teacher.state_dict().values()):
        assert name in blind or torch.allclose(other, value, atol=1e-4), name
    images = torch.rand(2, 1, 32, 32, 32, generator=torch.Generator().manual_seed(5))
    scores = [t.teacher.module.predict_patch_loss(images) for t in (eager, compiled)]  # [2, 8] each
    centred = [s - s.mean(1, keepdim=True) for s in scores]  # what the mask and the ranking loss see
    assert torch.allclose(centred[1], centred[0], atol=1e-5) and centred[0].std() > 1e-2


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_step_parts_compile_to_one_graph_each_without_breaks(precision):
    torch.manual_seed(0)
    net = HPMMaskedAutoEncoder(img_size=48, **SMALL)  # 27 patches
    images = torch.rand(2, 1, 48, 48, 48)
    k = num_masked(27, 0.75)
    mask = hard_patch_mask(torch.rand(2, 27), 0.75, 0.5)
    inferer = AutocastInferer(SimpleInferer(), precision)
    student = torch._dynamo.explain(lambda x, m: inferer(x, net, m, k))(images, mask)
    reconstruction, predicted = inferer(images, net, mask, k)
    loss = torch._dynamo.explain(HPMLoss(16))(reconstruction, predicted, images, mask, k)
    teachers = []
    for view in TEACHER_VIEWS:  # each teacher view's network pass, its masks drawn outside (as the trainer does)
        scorer = TeacherView(view)
        masks = scorer.draw(2, 27, torch.Generator().manual_seed(0))
        with torch.inference_mode():
            teachers.append(torch._dynamo.explain(lambda x, m: scorer.scores(net, x, m))(images, masks))
    for part in (student, loss, *teachers):
        assert (part.graph_count, part.graph_break_count, part.break_reasons) == (1, 0, [])
