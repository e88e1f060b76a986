"""Length-grouped batching: batches of examples of similar length, so a padded batch is mostly real
tokens, with the randomness of shuffling kept where it matters.

Per epoch: a random permutation (seeded by seed and epoch, never the global RNG) is cut into
mega-batches of `mega_batches` global batches; each mega-batch is sorted by length, cut into global
batches (batch_size x processes examples), and those batches are shuffled. A mega-batch's batches
stay together (as the Trainer's LengthGroupedSampler keeps them), so every mega-batch's run of
`mega_batches` batches covers a random sample of the data with the data's lengths: a run of
max_steps that ends mid-epoch computes on the data's tokens per example. Shuffling all of an epoch's batches instead
gave the first 150 of SST-2's 300 steps 1.05-1.21x the tokens of the last 150 (seeds 42-44; now
0.995-1.004), which made a 150-step throughput measure a draw of lengths as much as speed.
The global batch is what is grouped, and Accelerate hands its consecutive per-process slices to the
ranks, so every rank computes the same order and P processes of batch B see exactly the examples
one process of batch P*B sees. Only the last global batch (the remainder of the epoch) can be
short, and it stays last, where Accelerate's sharding expects it.

With gradient accumulation the unit grouped is the accumulated batch (batch_size x processes x
grad_accum examples, as the Trainer groups `train_batch_size * gradient_accumulation_steps`): it is
sorted and cut like a global batch, and its consecutive micro-batches are its slices, so B x A
trains on exactly the batches of one B*A batch (grouping the micro-batches instead gave 16 x 2 other
batches than 32).

Determinism is what makes resume exact: the engine sets the epoch on the loader and skips the
batches already consumed, and the order is a pure function of (seed, epoch, lengths, world size).
"""

import torch
from torch.utils.data import DataLoader, Sampler

# As transformers.Trainer's LengthGroupedSampler: sort within 50 batches' worth of examples.
MEGA_BATCHES = 50


class LengthGroupedSampler(Sampler):
    """Indices in an order whose consecutive runs of `global_batch` examples have similar lengths."""

    def __init__(self, lengths, global_batch: int, seed: int, mega_batches: int = MEGA_BATCHES):
        self.lengths = [int(n) for n in lengths]
        self.global_batch, self.seed, self.mega_batches = global_batch, seed, mega_batches
        self.epoch = 0

    def set_epoch(self, epoch: int):
        self.epoch = epoch

    def __len__(self):
        return len(self.lengths)

    def __iter__(self):
        return iter(self.order(self.epoch))

    def order(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)  # (seed, epoch) -> one stream
        perm = torch.randperm(len(self.lengths), generator=g).tolist()
        mega = self.mega_batches * self.global_batch
        order, rest = [], []
        for start in range(0, len(perm), mega):
            # Stable sort of a random permutation: ties broken by the permutation, not by index.
            group = sorted(perm[start:start + mega], key=self.lengths.__getitem__, reverse=True)
            cut = len(group) - len(group) % self.global_batch
            full = [group[i:i + self.global_batch] for i in range(0, cut, self.global_batch)]
            order += [i for b in torch.randperm(len(full), generator=g).tolist() for i in full[b]]
            rest += group[cut:]  # only the last mega-batch can leave a remainder
        return order + rest


def example_lengths(dataset, column: str = "input_ids") -> list[int]:
    """Token count of every example (one pass over the tokenized column)."""
    return [len(ids) for ids in dataset[column]]


def grouped_or_shuffled_loader(dataset, loop, group_by_length: bool, collate_fn, num_processes: int) -> DataLoader:
    """The training DataLoader: length-grouped when group_by_length, otherwise shuffled (Accelerate
    swaps in its seedable sampler); `loop` (config.schema.LoopSection) gives batch size, accumulation
    and seed. `num_processes`: the ranks the batches are dealt to. Grouped per accumulated batch,
    then split into micro-batches (module doc)."""
    if not group_by_length:
        return DataLoader(dataset, batch_size=loop.batch_size, shuffle=True, collate_fn=collate_fn)
    accumulated = loop.batch_size * num_processes * loop.grad_accum
    sampler = LengthGroupedSampler(example_lengths(dataset), accumulated, loop.seed)
    return DataLoader(dataset, batch_size=loop.batch_size, sampler=sampler, collate_fn=collate_fn)

