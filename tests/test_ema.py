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

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from ignite.engine import Engine, Events
from selfmedhpm.ema import EMATeacher, ema_decay_at


def test_decay_schedule_ramps_linearly_then_holds():
    assert ema_decay_at(0) == pytest.approx(0.999)
    assert ema_decay_at(50) == pytest.approx(0.99945)
    assert ema_decay_at(100) == pytest.approx(0.9999)
    assert ema_decay_at(300) == pytest.approx(0.9999)


def test_update_is_exponential_moving_average():
    torch.manual_seed(0)
    student = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    teacher = EMATeacher(student, 0.9, 0.9, ramp_epochs=0)
    start = {k: v.clone() for k, v in teacher.module.state_dict().items()}
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    student.train()(torch.randn(8, 4))  # changes the BatchNorm running stats and counter
    teacher.update(student, 0.9)
    w = teacher.module[0].weight
    assert torch.allclose(w, 0.9 * start["0.weight"] + 0.1 * student[0].weight)
    assert teacher.module[1].num_batches_tracked.item() == 1
    assert not any(p.requires_grad for p in teacher.module.parameters())


def test_teacher_is_a_copy_not_the_student():
    student = nn.Linear(2, 2)
    teacher = EMATeacher(student)
    assert teacher.module is not student
    assert teacher.module.weight.data_ptr() != student.weight.data_ptr()


def test_handler_updates_after_each_iteration_with_epoch_decay():
    from ignite.handlers import EMAHandler

    student = nn.Linear(2, 1, bias=False)
    nn.init.zeros_(student.weight)
    teacher = EMATeacher(student, decay_start=0.5, decay_end=0.25, ramp_epochs=1)
    assert isinstance(teacher, EMAHandler) and teacher.module is teacher.ema_model

    def step(engine, batch):
        with torch.no_grad():
            student.weight.fill_(1.0)

    engine = Engine(step)
    momenta = []
    engine.add_event_handler(Events.ITERATION_COMPLETED, lambda e: momenta.append(e.state.ema_momentum))
    teacher.attach(engine)
    engine.run([0, 0], max_epochs=1)
    assert teacher.decay == pytest.approx(0.5) and momenta == [pytest.approx(0.5)] * 2  # ignite's momentum: 1 - d
    assert torch.allclose(teacher.module.weight, torch.full((1, 2), 0.75))  # 0 -> 0.5 -> 0.75
    engine.run([0, 0], max_epochs=2)  # epoch 2: decay reached decay_end
    assert teacher.decay == pytest.approx(0.25) and momenta[2:] == [pytest.approx(0.75)] * 2
    assert torch.allclose(teacher.module.weight, torch.full((1, 2), 1 - 0.25 * 0.25 * 0.25))


@pytest.mark.parametrize("decays", [(0.0, 0.5), (0.5, 1.0), (1.5, 0.9)])
def test_decays_outside_the_open_unit_interval_are_refused(decays):
    with pytest.raises(ValueError, match="must be in \\(0, 1\\)"):
        EMATeacher(nn.Linear(2, 2), *decays)


def test_state_dict_roundtrip():
    student = nn.Linear(3, 3)
    a, b = EMATeacher(student), EMATeacher(nn.Linear(3, 3))
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.module.weight, b.module.weight)
