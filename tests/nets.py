"""Small models the optimizer tests share."""

import torch


class Net(torch.nn.Module):
    """Embedding, a hidden matrix, a norm and a classifier head: every role a group split knows.
    The classifier has 12,288 weights, above torchao's 4,096-element quantisation threshold."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(24, 64)
        self.hidden = torch.nn.Linear(64, 96)
        self.norm = torch.nn.LayerNorm(96)
        self.classifier = torch.nn.Linear(96, 128)

    def get_input_embeddings(self):
        return self.embed

    def forward(self, ids):
        return self.classifier(self.norm(torch.relu(self.hidden(self.embed(ids)))))


def net(dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    return Net().to(dtype)
