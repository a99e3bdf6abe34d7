"""Publishers' own model code, copied as the reference forwards the tests compare ours with (the
tests write random-weight checkpoints in each publisher's layout and load them through our code)."""
from __future__ import annotations

from torch import nn


class ImprovedMLP(nn.Module):
    """christophschuhmann/improved-aesthetic-predictor simple_inference.py's MLP (Lightning left out)."""

    def __init__(self, input_size):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(input_size, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
            nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1),
        )

    def forward(self, x):
        return self.layers(x)
