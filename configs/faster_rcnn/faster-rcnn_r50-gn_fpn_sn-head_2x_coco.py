_base_ = './faster-rcnn_r50-gn_fpn_sn-head_1x_coco.py'
# upstream's 2x schedule (mmdet::_base_/schedules/schedule_2x.py)
max_epochs = 24
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    dict(
        type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(
        type='MultiStepLR',
        begin=0,
        end=max_epochs,
        by_epoch=True,
        milestones=[16, 22],
        gamma=0.1)
]
