import torch
from hypothesis import settings

settings.register_profile("course", max_examples=25, deadline=None)
settings.load_profile("course")
torch.set_num_threads(1)
