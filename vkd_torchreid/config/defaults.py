"""The config schema: every key the project knows and its default, in one place.

Key names follow torchreid's ``scripts/default_config.py`` wherever the two overlap, so a
torchreid user feels at home; the ``vkd`` section holds the method's own keys. The defaults
are the reference's (aimagelab/VKD). Applications extend the schema with sections of their
own (the demo: :func:`vkd_torchreid.apps.demo_config.add_demo_config`).
"""
from __future__ import annotations

from yacs.config import CfgNode as CN

from vkd_torchreid.data.sampler import MULTIVIEW_SAMPLER

#: Stages of the method.
STAGES = ("teacher", "student")
#: How a teacher cache is checked before reuse: 'cheap' (key, shape, size and modification
#: time from its manifest) or 'full' (also the SHA-256 of its features, on rank 0).
TEACHER_CACHE_VERIFY = ("cheap", "full")


def get_default_config() -> CN:
    """Returns a fresh CfgNode with every key the project knows and its default."""
    cfg = CN()

    cfg.model = CN()
    cfg.model.name = "vkd_resnet50"
    cfg.model.pretrained = True  # ImageNet weights from the torch hub cache or pretrained_path
    cfg.model.pretrained_path = ""  # file or folder with torchvision ImageNet weights
    cfg.model.load_weights = ""  # weights to start from (ours, torchreid's, or the reference's)
    cfg.model.resume = ""  # checkpoint to resume training from (as --resume PATH)
    # Allow legacy pickled checkpoints (torch.load(weights_only=False)); --trust-checkpoint
    # sets it. Only for files whose source you trust.
    cfg.model.trust_checkpoint = False
    cfg.model.last_stride = 1

    cfg.data = CN()
    cfg.data.type = "video"
    cfg.data.root = "reid-data"
    cfg.data.sources = ["vkd_mars"]
    cfg.data.targets = ["vkd_mars"]
    cfg.data.workers = 4
    cfg.data.height = 256
    cfg.data.width = 128
    cfg.data.norm_mean = [0.485, 0.456, 0.406]
    cfg.data.norm_std = [0.229, 0.224, 0.225]
    cfg.data.save_dir = "log"
    cfg.data.pad = 10  # pixels of padding before the random crop
    cfg.data.flip_prob = 0.5
    cfg.data.random_erase_prob = 0.5
    cfg.data.random_erase_scale = [0.02, 0.4]
    cfg.data.random_erase_ratio = []  # empty: the dataset's default (people 0.3-3.3, vehicles 0.7-1.4)
    cfg.data.random_erase_ratio_dist = "uniform"  # 'uniform' (the reference) or 'log'
    # Where training frames are decoded: 'cpu' (the loader workers: OpenCV + Pillow, the
    # paper's pipeline) or 'cuda' (workers read JPEG bytes; nvJPEG decodes the batch and it is
    # resized (antialiased bicubic), cropped, flipped, normalised and erased on the GPU, with
    # the same draws). Not Pillow-exact: nvJPEG frames differ from the CPU path's by about
    # 1 uint8 level on average, at most 69-82 on sharp colour edges (H200; tools/gpu_check.py).
    # It pays off where CPU cores are short: with 16 cores per GPU, 'cpu' feeds an H200
    # faster (docs/performance.md). Keep 'cpu' for the paper's configs.
    cfg.data.decode_device = "cpu"
    cfg.data.skip_corrupt = False  # replace an unreadable frame by another of its tracklet
    cfg.data.mars_query_in_gallery = True  # the reference puts MARS query tracklets in the gallery
    cfg.data.atrw_views = "side"  # how ATRW training tracklets/views are formed
    cfg.data.duke_tracklets = "folder"  # 'folder' (standard protocol) or 'reference'
    cfg.data.veri_query_track = "longest"  # 'longest' or 'first' (the reference)
    # VeRi's I2I/V2I gallery: 'name_test' (every test image) or 'tracks' (the reference: the
    # images of the gallery tracks as data.veri_query_track reads them)
    cfg.data.veri_image_gallery = "name_test"
    cfg.data.split_id = 0  # iLIDS-VID / PRID2011: which of the ten train/test splits (0-9)

    cfg.sampler = CN()
    cfg.sampler.train_sampler = MULTIVIEW_SAMPLER
    cfg.sampler.num_instances = 4  # K items per identity in a batch

    cfg.video = CN()
    cfg.video.seq_len = 8  # N: frames per item in training (teacher sees all) and at test time
    cfg.video.test_seq_len = 0  # frames per test tracklet; 0: video.seq_len (VeRi trains N=1)
    cfg.video.sample_method = "evenly"  # test-time sampling: 'evenly' (first of N chunks) or 'all'
    cfg.video.pooling_method = "avg"
    cfg.video.test_chunk = 64  # frames per forward pass when sample_method is 'all'

    cfg.train = CN()
    cfg.train.optim = "adam"
    cfg.train.lr = 1e-4
    cfg.train.weight_decay = 1e-5
    cfg.train.max_epoch = 300
    cfg.train.batch_size = 32  # P x K items (8 x 4 for the teacher on MARS)
    cfg.train.lr_scheduler = "multi_step"
    cfg.train.stepsize = [100, 200]
    cfg.train.gamma = 0.1
    cfg.train.seed = 1
    cfg.train.print_freq = 20
    cfg.train.channels_last = False
    cfg.train.amp = ""  # '', 'bf16' (CPU and CUDA) or 'fp16' (CUDA, with GradScaler)
    # With CUDA (training and evaluation): cuDNN picks the fastest convolution algorithm for
    # the run's fixed input shapes, as torchreid's main.py sets it.
    cfg.train.cudnn_benchmark = True
    # With CUDA: TF32 for float32 matmuls and convolutions. None (null) keeps PyTorch's own
    # (convolutions in TF32 on Ampere and newer, matmuls in float32); False runs plain
    # float32 as the reference's PyTorch 1.3 did; True also runs matmuls in TF32.
    cfg.train.tf32 = None
    # Distributed training under torchrun (one process per GPU; without torchrun: ignored).
    cfg.train.dist_backend = "auto"  # 'auto' (nccl with CUDA, else gloo), 'nccl' or 'gloo'
    # Batch-hard triplet mining and distance preservation on the global batch (embeddings
    # gathered with their gradients); False mines per rank: faster, not equivalent.
    cfg.train.dist_gather = True
    cfg.train.sync_bn = False  # BatchNorm statistics over the global batch
    cfg.train.dist_timeout_s = 1800  # a collective waiting longer (a dead rank) is an error
    cfg.train.adam_beta1 = 0.9
    cfg.train.adam_beta2 = 0.999

    cfg.loss = CN()
    cfg.loss.name = "triplet"  # CE + triplet, as the reference
    cfg.loss.softmax = CN()
    cfg.loss.softmax.label_smooth = False
    cfg.loss.softmax.epsilon = 0.1
    cfg.loss.triplet = CN()
    cfg.loss.triplet.soft_margin = True  # log(1 + exp(d_ap - d_an)); False: hinge with margin
    cfg.loss.triplet.margin = 0.3
    cfg.loss.triplet.weight_t = 1.0
    cfg.loss.triplet.weight_x = 1.0

    cfg.test = CN()
    cfg.test.batch_size = 32
    cfg.test.dist_metric = "cosine"
    cfg.test.normalize_feature = True
    cfg.test.ranks = [1, 5, 10, 20]
    cfg.test.evaluate = False
    cfg.test.eval_freq = -1
    cfg.test.start_eval = 0
    cfg.test.rerank = False
    cfg.test.visrank = False
    cfg.test.visrank_topk = 10
    cfg.test.amp = ""  # autocast mode for feature extraction
    cfg.test.progress = "auto"  # extraction progress bar: 'auto' (on a terminal), 'always', 'never'

    cfg.vkd = CN()
    cfg.vkd.stage = "teacher"
    cfg.vkd.teacher_checkpoint = ""  # ours, torchreid's, or a released reference experiment
    cfg.vkd.teacher_arch = ""  # teacher model name when it differs from model.name
    # The student's own stage-1 (teacher-stage) model for cross-distillation, as the
    # reference's --student; empty: a copy of the teacher (or ImageNet for another backbone).
    cfg.vkd.student_checkpoint = ""
    cfg.vkd.student_frames = 2  # M frames of the teacher's N that the student sees
    cfg.vkd.tau = 10.0
    cfg.vkd.alpha = 0.1  # weight of the KD term
    cfg.vkd.beta = 1e-4  # weight of the distance-preservation term
    cfg.vkd.logits_loss = "kl"
    cfg.vkd.reinit_layer4 = True
    cfg.vkd.generations = 1
    cfg.vkd.generation_lr_decay = 0.1
    cfg.vkd.generation_lr_floor = 1e-5  # the reference's floor: max(lr * decay^g, floor)
    cfg.vkd.view_strategy = "multiview_random"  # the reference's; 'multiview': camera-balanced
    cfg.vkd.teacher_bn = "batch"
    # The teacher-feature cache (ours): per-frame features of the eval-mode teacher computed
    # once; the loader then decodes only the student's M frames. Needs vkd.teacher_bn 'eval'.
    cfg.vkd.teacher_cache = False
    cfg.vkd.teacher_cache_flip = True  # also cache each frame's horizontal flip
    cfg.vkd.teacher_cache_dir = ""  # default: <data.save_dir>/teacher_cache
    cfg.vkd.teacher_cache_device = False  # keep a copy on the training device when it fits
    cfg.vkd.teacher_cache_verify = "cheap"  # before reuse: 'cheap' or 'full' (SHA-256, rank 0)

    cfg.use_gpu = True
    return cfg
