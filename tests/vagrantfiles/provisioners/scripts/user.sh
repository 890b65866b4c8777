#!/bin/bash
mkdir -p /home/vagrant/.config && echo ok > /home/vagrant/.config/app
