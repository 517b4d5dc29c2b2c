"""The bottom-up-attention detector (Anderson et al.) that made IGLUE's region features, in plain PyTorch.

Faster R-CNN ResNet-101 C4 trained on Visual Genome (1,600 object and 400 attribute classes), as
py-bottom-up-attention (github.com/airsplay/py-bottom-up-attention, a detectron2 fork) builds it
from ``configs/VG-Detection/faster_rcnn_R_101_C4_attr_caffemaxpool.yaml``, and run the way IGLUE
ran it: volta's ``features_extraction/detectron2_proposal_maxnms.py`` (github.com/e-bug/volta; its
``features_extraction/datasets/*/*_boxes36_h5-proposal.py`` scripts for xFlickr&CO, MaRVL, WIT,
Flickr30k all call it). No detectron2: layers are torch / torchvision ops.

Settings and where each comes from (file paths are in py-bottom-up-attention unless marked volta;
"yaml" is the attr_caffemaxpool config, "defaults" ``detectron2/config/defaults.py``):

Backbone (``modeling/backbone/resnet.py``)
- ResNet-101: res2..res5 blocks 3, 4, 23, 3 (``build_resnet_backbone``, yaml RESNETS.DEPTH 101);
  the C4 backbone stops at res4 (defaults RESNETS.OUT_FEATURES ["res4"]), res5 is the box head.
- stem: 7x7/2 conv, 64 channels, frozen BN, ReLU, then the caffe max-pool: kernel 3, stride 2,
  padding 0, ceil_mode True (``BasicStem`` with yaml CAFFE_MAXPOOL True).
- bottlenecks with the stride in the first 1x1 (defaults RESNETS.STRIDE_IN_1X1 True), widths
  64 -> 256 doubling per stage (WIDTH_PER_GROUP 64, RES2_OUT_CHANNELS 256), projection shortcut
  when channels change, no conv biases.
- frozen batch norm everywhere (defaults RESNETS.NORM "FrozenBN"; ``layers/batch_norm.py``
  FrozenBatchNorm2d, eps 1e-5, buffers weight / bias / running_mean / running_var).
- input: BGR (defaults INPUT.FORMAT), minus PIXEL_MEAN [102.9801, 115.9465, 122.7717] (yaml),
  divided by PIXEL_STD [1, 1, 1] (defaults); no size divisibility padding (ResNet backbone).

RPN (``modeling/proposal_generator/rpn.py``, ``rpn_outputs.py``, ``modeling/anchor_generator.py``)
- on res4 (stride 16): 3x3 conv 1024 -> 512 (yaml PROPOSAL_GENERATOR.HID_CHANNELS 512) + ReLU,
  1x1 objectness (12) and 1x1 deltas (48).
- 12 anchors per place: sizes 64, 128, 256, 512 (yaml ANCHOR_GENERATOR.SIZES) x ratios 0.5, 1, 2
  (defaults), offset 0.0, size-major order, w = sqrt(s^2 / r), h = r w.
- decoding with weights (1, 1, 1, 1) (defaults RPN.BBOX_REG_WEIGHTS), dw/dh clamped at
  log(1000/16) (``modeling/box_regression.py``).
- test time: top 6000 by objectness (Base-RCNN-C4.yaml RPN.PRE_NMS_TOPK_TEST), clip, drop
  boxes with a side <= 0 (defaults PROPOSAL_GENERATOR.MIN_SIZE 0), NMS 0.7 (defaults
  RPN.NMS_THRESH), keep 300 (volta ``build_model``: RPN.POST_NMS_TOPK_TEST = 300).

Box head (``modeling/roi_heads/roi_heads.py`` Res5ROIHeads, ``modeling/poolers.py``)
- RoIPool 14 x 14 (yaml POOLER_TYPE "ROIPool", defaults POOLER_RESOLUTION 14) at scale 1/16,
  torchvision's roi_pool as ``ROIPooler`` uses it.
- res5: 3 bottlenecks 1024 -> 2048 with yaml RES5HALVE False: block 1's conv1 and shortcut
  stride 1 (not 2), every conv2 padding 2 and dilation 2; output 14 x 14, mean-pooled to 2048-d.
- predictors (``modeling/roi_heads/fast_rcnn.py`` FastRCNNOutputLayers, yaml ATTR True):
  cls_score 2048 -> 1601 (1600 classes + background, background last), bbox_pred
  2048 -> 6400 (class-specific, defaults CLS_AGNOSTIC_BBOX_REG False), attribute branch:
  embedding(1601, 256) of the argmax class (background included) concatenated to the feature,
  fc 2304 -> 512 + ReLU, attr_score 512 -> 401 (yaml NUM_ATTRS 400).
- box decoding with weights (10, 10, 5, 5) (defaults ROI_BOX_HEAD.BBOX_REG_WEIGHTS).

Extraction (volta ``features_extraction/detectron2_proposal_maxnms.py``; see ``extract.py``)
- resize: shorter side 800, longer at most 1333 (defaults INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST:
  volta comments out the 600 / 1000 that py-bottom-up-attention's
  ``demo/detectron2_mscoco_proposal_maxnms.py`` sets for LXMERT's COCO features; pass
  ``min_size=600, max_size=1000`` for those), ``ResizeShortestEdge`` rounding, PIL bilinear.
- one image per forward pass (volta asserts a batch of 1).
- scores: softmax over 1601, background (last) dropped; each proposal's best class and its box,
  clipped to the resized image; NMS over these boxes for thresholds ``np.arange(0.5, 1.0, 0.1)``
  until 36 remain, at most 36 (NUM_OBJECTS); SCORE_THRESH_TEST 0.2 and NMS_THRESH_TEST 0.6 are
  set but never read by this path.
- this is volta's own ``fast_rcnn_inference_single_image`` (max-class, class-agnostic NMS, no score
  threshold), not detectron2's per-class one with score threshold 0.2 that py-bottom-up-attention's
  ``demo/demo_feature_extraction_attr.ipynb`` calls; both loop NMS thresholds the same way.
- features: pooled res5 of the kept proposals (not re-pooled on the regressed boxes); attributes:
  ``pred_attr_logits[..., :-1].softmax(-1).max(-1)``.
- boxes: scaled to the original image (``detector_postprocess``), clipped, empty boxes dropped.
- output per image: features [36, 2048] f32, boxes [36, 4] f32 x1 y1 x2 y2 in pixels, obj_id /
  attr_id int64, obj_conf / attr_conf f32, img_w, img_h (volta's ``extract``).

Image decoding: upstream reads with cv2.imread (BGR, EXIF orientation applied); RC3 decodes with
PIL, applies the EXIF orientation and reverses the channels. JPEG decoders may differ in the last
bit of a pixel; nothing else differs.
"""
from rc3.vision.butd.config import ButdConfig
from rc3.vision.butd.extract import ButdExtractor, preprocess, resized_shape, select_boxes
from rc3.vision.butd.model import ButdDetector
from rc3.vision.butd.weights import (
    convert_state,
    detectron2_to_rc3,
    infer_config,
    load_detector,
    read_detectron2_pickle,
    save_rc3_weights,
)

__all__ = [
    "ButdConfig",
    "ButdDetector",
    "ButdExtractor",
    "convert_state",
    "detectron2_to_rc3",
    "infer_config",
    "load_detector",
    "preprocess",
    "read_detectron2_pickle",
    "resized_shape",
    "save_rc3_weights",
    "select_boxes",
]
